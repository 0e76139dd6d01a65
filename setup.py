"""edgeseg: SAM3's text encoder, distilled, quantized and compiled for edge devices.

Install profiles (README "Install profiles"): ``pip install edgeseg`` installs what running a bundle
needs (tokenizer, ONNX Runtime, the CLI, manifest validation); the build toolchain and the optional
backends are extras. edgeseg/errors.py ``EXTRAS`` maps each extra to the modules it provides, for the
one-line "needs the X extra" errors: keep the two in step.
"""

import os

from setuptools import find_packages, setup

# tqdm is in the base set: `edgeseg encode --bundle` shows a progress bar, and tqdm is one small
# pure-Python wheel (about 80 kB, no dependencies), cheaper than a second progress implementation.
BASE = [
    "numpy",
    "onnxruntime",
    "click>=8.1",
    "ftfy",
    "regex",
    "tqdm",
    "jsonschema>=4.18",  # manifest validation (edgeseg/manifest.schema.json, edgeseg/bundlecheck.py)
]
EXTRAS = {
    # export, quantize, build, distill, convert, compare, analyze's embedding part, bench
    # (onnxconverter-common: FP16 conversion; psutil: process memory and CPU load in edgeseg bench)
    "build": ["torch>=2.4,<=2.14.1", "onnx", "polygraphy", "safetensors", "onnxconverter-common>=1.16", "psutil"],
    # Meta's SAM3 (FP32 baseline and parity oracle). The 0.1.4 wheel imports psutil and torchvision
    # without declaring them; scikit-image gives edgeseg bench the sample photos of its segmentation part.
    "sam3": ["sam3==0.1.4", "torchvision<=0.29.1", "psutil", "scikit-image",
             "imageio>=2.31", "av>=12"],  # edgeseg segment / bench --video: decode clips, write GIF/MP4
    "coreml": ["coremltools>=8"],  # 9.0 tested (converts on Linux; predicts on macOS)
    "tensorrt": ["tensorrt>=10"],  # GPU machines only (Linux/Windows x86-64 with an NVIDIA driver)
    "transformers": ["transformers==5.23.0"],  # the pinned test oracle (interop with the HF SAM3 classes)
    "plots": ["matplotlib"],  # PNG plots of analyze, distill and bench (skipped with a warning without it)
}
EXTRAS["dev"] = ["pytest", "ruff", *EXTRAS["sam3"], *EXTRAS["transformers"]]  # the tests' oracles
# Everything a PC needs to build, test and benchmark; TensorRT is left out (no wheel for most machines).
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "tensorrt" for req in reqs})

setup(
    name="edgeseg",
    version="0.1.0",
    description="SAM3 text encoder for edge devices: tokenizer, MobileCLIP students, checkpoints, export",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edgeseg", "edgeseg.*"]),
    package_data={"edgeseg": [
        "assets/*.gz",
        "encoders/configs/*.json",
        "data/prompts/*.txt",
        "data/prompts/*.json",
        "data/prompts/SOURCES.md",
        "bench/*.json",
        "manifest.schema.json",
        "targets/jetson_kit/*.json",
    ]},
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["edgeseg=edgeseg.cli:main"]},
)
