"""Embedding-level accuracy of a candidate against the FP32 SAM3 teacher.

What is compared, exactly: the teacher runs at context 32 and the students at 16. The teacher is
causal, so its first 16 positions at context 32 are what it would give at context 16; the students
are bidirectional and see their own 16 positions. Token metrics compare ``candidate[:, :16]`` with
``teacher[:, :16]`` on the positions valid (not padding) in *both* (they differ only for prompts
longer than 16 tokens, whose EOT moves; those are counted in ``truncated_at_candidate``). The
retrieval check uses what SAM3's scorer reads: the masked mean of the memory over each encoder's
own valid tokens (teacher: all of its valid tokens at 32, candidate: at its context), cosine
similarity, and asks whether each prompt's candidate embedding is closest to its own teacher
embedding among all evaluated prompts.
"""

from __future__ import annotations

from typing import Any

from edgeseg.outputs import Encoded, cosine, pooled, retrieval, token_fidelity


def compare(candidate: Encoded, teacher: Encoded) -> dict[str, Any]:
    """Token cosine/MSE on the common positions and pooled retrieval; see the module docstring."""
    if candidate.memory.shape[0] != teacher.memory.shape[0]:
        raise ValueError("candidate and teacher encoded different numbers of prompts")
    length = min(candidate.memory.shape[1], teacher.memory.shape[1])
    # the gate's metric (edgeseg.outputs.token_fidelity) on the positions valid in both
    tokens = token_fidelity(candidate.memory[:, :length], teacher.memory[:, :length],
                            candidate.mask[:, :length] | teacher.mask[:, :length])
    mask_mismatch = int((candidate.mask[:, :length] != teacher.mask[:, :length]).any(1).sum())
    cand_pooled = pooled(candidate.memory, candidate.mask)
    ref_pooled = pooled(teacher.memory, teacher.mask)
    found = retrieval(cand_pooled, ref_pooled)  # ties count against a prompt: constant outputs get chance
    own = cosine(cand_pooled, ref_pooled)
    truncated = int((~candidate.mask).all(1).sum())  # every position valid: the prompt filled the context
    return {
        "prompts": tokens["prompts"],
        "compared_positions": length,
        "mean_token_cosine": tokens["mean_cosine"],
        "worst_token_cosine": tokens["worst_cosine"],
        "mse": tokens["mse"],
        "pooled_cosine_mean": float(own.mean()),
        "retrieval_top1": found["retrieval_top1"],
        "retrieval_top5": found["retrieval_top5"],
        "mean_rank": found["mean_rank"],
        "retrieval_chance": found["retrieval_chance"],
        "mask_mismatch_prompts": mask_mismatch,
        "truncated_at_candidate": truncated,
    }


METHOD = __doc__.split("\n\n", 1)[1].strip().replace("\n", " ")
