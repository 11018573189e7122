"""avflow_jax: AV-Flow (text to a talking 4D avatar) in JAX/Flax."""

from setuptools import find_packages
from setuptools import setup

setup(
    name="avflow_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of AV-Flow: text to speech and a talking 4D avatar.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    package_data={"avflow_jax": ["static/*.html"]},
    packages=find_packages(include=["avflow_jax", "avflow_jax.*", "data_prep", "data_prep.*",
                                    "configs"]),
    install_requires=[
        # jax 0.11+ needs Python 3.12; 0.10.2 is the newest for 3.11.
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "grain>=0.2.18",
        "array-record>=0.8.6",
        "numpy>=1.26",
        "librosa>=0.11",
        "einops>=0.8",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "msgpack>=1.0",
        "safetensors>=0.4",
        "scipy>=1.11",
        "soundfile>=0.12",
        "soxr>=0.5",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "pillow>=10",
        "imageio-ffmpeg>=0.5",
    ],
    extras_require={
        # eSpeak NG for the demo corpus and the text front end (GPL-3, so kept optional).
        "demo": ["espeakng-loader>=0.2.4"],
        # WER in `evaluate`: an offline recogniser (its en-us model ships in the wheel) + scorer.
        "wer": ["pocketsphinx>=5.0", "jiwer>=3.0"],
        # `python -m avflow_jax.serve`: the live page and its WebSocket endpoint.
        "serve": ["aiohttp>=3.9"],
        # mel-cepstral-distance: the MCD parity test's reference implementation (pure Python).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "espeakng-loader>=0.2.4",
                 "pocketsphinx>=5.0", "jiwer>=3.0", "mel-cepstral-distance==0.0.4",
                 # The live page's end-to-end test drives Debian's chromium (.ci/run installs
                 # it with chromium-driver) through selenium.
                 "aiohttp>=3.9", "selenium>=4.20"],
        # Reference PyTorch code for parity tests only; the package never imports torch.
        # The reference `bigvgan` package is installed with --no-deps (its pins pull CUDA torch).
        "parity": ["torch==2.13.0", "transformers>=4.57",
                   "huggingface_hub>=0.24"],
        "gpu": ["jax[cuda12]>=0.10.2"],
    },
)
