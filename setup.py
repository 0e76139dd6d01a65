"""edgeseg: SAM3's text encoder, distilled, quantized and compiled for edge devices."""

from setuptools import find_packages, setup

setup(
    name="edgeseg",
    version="0.1.0",
    description="SAM3 text encoder for edge devices: tokenizer, MobileCLIP students, checkpoints, export",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edgeseg", "edgeseg.*"]),
    package_data={"edgeseg": ["assets/*.gz", "encoders/configs/*.json", "data/*.txt", "bench/*.json",
                              "targets/jetson_kit/*.json"]},
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "numpy",
        "onnx",
        "onnxruntime",
        "polygraphy",
        "click>=8.1",
        "ftfy",
        "regex",
        "safetensors",
        "tqdm",
        "matplotlib",  # PNG plots of analyze/bench reports (imported lazily)
    ],
    extras_require={
        # Meta's SAM3 (FP32 baseline and parity oracle). The 0.1.4 wheel imports psutil and
        # torchvision without declaring them.
        "sam3": ["sam3==0.1.4", "torchvision<=0.29.1", "psutil",
                 "scikit-image"],  # edgeseg bench: the sample photos of the segmentation benchmark
        "coreml": ["coremltools>=8"],  # 9.0 tested (converts on Linux; predicts on macOS)
        "tensorrt": ["tensorrt>=10"],  # GPU machines only; not installable in CI
        # Hugging Face transformers: the parity oracle for transformers checkpoints (loading them needs
        # only safetensors); the version the configs edgeseg writes and the parity tests follow
        "transformers": ["transformers==5.23.0"],
        "dev": ["pytest", "ruff", "transformers==5.23.0"],
    },
    entry_points={"console_scripts": ["edgeseg=edgeseg.cli:main"]},
)
