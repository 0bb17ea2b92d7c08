"""Packaging for metaflow-checkpointing.

All code lives under ``metaflow_extensions/`` so Metaflow ships it in the code package of remote
tasks.  ``metaflow_extensions`` itself must be listed: with only ``metaflow_extensions.*`` a PEP 660
editable install maps nothing and Metaflow finds no extension.
"""

from setuptools import find_namespace_packages, setup

setup(
    name="metaflow-checkpointing",
    version="0.1.0",
    description="Checkpoints you can trust for Metaflow steps: @checkpoint, current.checkpoint, "
    "content-addressed manifests on the flow's datastore.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_namespace_packages(include=["metaflow_extensions", "metaflow_extensions.*"]),
    install_requires=[
        # Floor: the lowest Metaflow `make test-lowest` passes on (docs/development.md); exact CI
        # versions are in constraints.txt, used by the Makefile only.
        "metaflow>=2.19.17,<3",
        "blake3>=1.0",
        "tenacity>=8.2",
        # az:// and gs:// stores (and any other fsspec URL). Floors of the extras below are the
        # lowest versions the tests named beside them pass on, the rest at constraints.txt.
        # fsspec: before 2024.5 its local filesystem shows a file while it is being written
        # (tests/storage/test_conformance.py::test_list_never_shows_writes_in_flight).
        "fsspec>=2024.5",
    ],
    extras_require={
        # boto3 1.28.0 (botocore 1.31.0) passes tests/storage/test_s3.py.
        "s3": ["boto3>=1.28"],
        # Any torch 2.x from 2.1 on: a user's own (CUDA, ROCm) build is kept. numpy: TrainingState
        # saves and restores NumPy's RNG state as well.
        "torch": ["torch>=2.1", "safetensors>=0.4", "numpy>=1.22"],
        # frameworks/lightning.py: CheckpointCallback (also works with the `lightning` package).
        "lightning": ["pytorch-lightning>=2.1"],
        # frameworks/hf_trainer.py: HFCheckpointCallback (the Trainer needs accelerate). 4.50.0 with
        # accelerate 0.26.0 passes tests/frameworks/test_hf_trainer_callback.py and resumes
        # bitwise in test_hf_trainer.py; before 4.50 the Trainer's own RNG-state load fails on
        # torch>=2.6 (weights_only).
        "transformers": ["transformers>=4.50", "accelerate>=0.26"],
        # frameworks/hub.py: @huggingface_hub / current.huggingface_hub (imported only in the task).
        # 0.24: tests/integration/test_huggingface_hub.py passes whole (0.23 cannot parse a
        # model_info without "downloads"; before 0.23 local_dir snapshots are cache symlinks).
        "huggingface": ["huggingface_hub>=0.24"],
        # az:// roots (and the azure datastore's checkpoints): adlfs on the Azure SDK. 2026.2:
        # the first adlfs with rm_file, which deletes use (test_conformance.py::test_delete[azure]).
        "azure": ["adlfs>=2026.2", "azure-identity>=1.15"],
        # gs:// roots (and the gs datastore's checkpoints): gcsfs (each release pins its fsspec).
        "gs": ["gcsfs>=2024.5"],
        # @checkpoint(compression="zstd"): imported only when a blob is compressed or read back.
        # 0.22.0 passes tests/core/test_compression.py.
        "zstd": ["zstandard>=0.22"],
        "test": [
            "boto3>=1.28",
            "moto[server]>=5.0",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "pytest-timeout>=2.3",
            "psutil>=5.9",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mkdocs>=1.6",
            "pytorch-lightning>=2.1",
            "huggingface_hub>=0.24",
            "transformers>=4.50",
            "accelerate>=0.26",
            # Azure Blob against Azurite, GCS against gcp-storage-emulator (tests/emulators).
            "adlfs>=2026.2",
            "azure-identity>=1.15",
            "gcsfs>=2024.5",
            "gcp-storage-emulator>=2024.8",
            "zstandard>=0.22",
            # argo-workflows create (tests/integration/test_deploy_json.py) imports it.
            "kubernetes>=28",
        ],
        "docs": ["mkdocs>=1.6"],
        # benchmarks/bench_curves.py plots its cost curves to PNG (make bench installs it).
        "bench": ["matplotlib>=3.7", "psutil>=5.9", "boto3>=1.28", "moto[server]>=5.0"],
    },
    classifiers=["Programming Language :: Python :: 3", "Framework :: Metaflow"],
)
