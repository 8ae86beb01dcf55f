"""Install uniperceiver.  See README.md: `bash tools/setup_env.sh` does this inside `.venv`."""
from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("uniperceiver/__init__.py").read_text().split("# end-version")[0], version)

setup(
    name="uniperceiver",
    version=version["__version__"],
    description="Uni-Perceiver: one shared transformer for many perception tasks, trained and evaluated zero-shot",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tools", "configs")),
    # Wide ranges on purpose: GPU users keep their own CUDA torch.  tools/setup_env.sh pins this machine's build.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "pyyaml>=5.1",
        "yacs>=0.1.8",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "timm>=0.9",
        "tensorboard",
        "tqdm",
        "pillow",
        "ftfy",
        "regex",
        "open-clip-torch>=2.20",  # only for its BPE merges file, located without importing the package
        "pycocotools>=2.0.6",
        "pycocoevalcap>=1.2",
        "submitit>=1.4",
        "av>=10",
        "webdataset>=0.2",  # DATASETS.FORMAT webdataset: tar shards (uniperceiver/data/shards.py)
        "matplotlib",  # tools/plot_metrics.py, tools/visualize_data.py
        "safetensors",  # MODEL.WEIGHTS *.safetensors, tools/convert_checkpoint.py --to safetensors
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.14"],
        "demo": ["mlxtend", "scikit-image", "scikit-learn", "gensim", "scikit-video"],
        "wandb": ["wandb"],  # LOGGER.WRITERS [..., "wandb"]
        "test": [
            "pytest>=7",
            "pytest-timeout",
            "deepspeed>=0.14",
            "mlxtend",
            "scikit-image",
            "scikit-learn",
            "gensim",
            "scikit-video",
            "wandb",
        ],
    },
)
