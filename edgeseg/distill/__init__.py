"""Distillation of the SAM3 text encoder into a SAM3-LiteText student (``edgeseg distill``).

* :mod:`edgeseg.distill.cache`: phase 1, the teacher's memory for every prompt of a corpus, fp16,
  in memory-mappable ``.npy`` shards with a manifest (resumable, sharded across torchrun ranks);
* :mod:`edgeseg.distill.train`: phase 2, the student trained on the cached targets (masked token
  MSE + cosine loss, AdamW, warmup + cosine, DDP under torchrun, atomic checkpoints, exact resume,
  held-out evaluation, metrics and curves);
* :mod:`edgeseg.distill.splice`: a full SAM3 checkpoint with the student in the LiteText layout
  (efficientsam3 ``.pt`` or a transformers ``Sam3LiteTextModel`` folder).
"""

from edgeseg.distill.cache import TeacherCache, build_cache, teacher_identity
from edgeseg.distill.splice import splice_student, splice_transformers
from edgeseg.distill.train import DistillConfig, distill

__all__ = ["DistillConfig", "TeacherCache", "build_cache", "distill", "splice_student", "splice_transformers",
           "teacher_identity"]
