from setuptools import find_packages, setup

setup(
    name="minigan",
    version="0.1.0",
    description="A tiny, autograd-free GAN engine: every forward and backward pass written by hand",
    # kernels/ (the CUDA sources the CuPy backend compiles at run time) ships inside the package as
    # minigan/kernels/, so that an installed minigan finds them where no checkout is (minigan.cupy_backend.KERNELS).
    packages=find_packages(include=["minigan", "minigan.*"]) + ["minigan.kernels"],
    package_dir={"minigan.kernels": "kernels"},
    # minigan/tiles/: the GEMM tiles measured fastest on a GPU, by its name (minigan.cupy_step.tile_table)
    package_data={"minigan.kernels": ["*.cu", "*.cuh"], "minigan": ["tiles/*.jsonl"]},
    python_requires=">=3.9",
    install_requires=["numpy>=1.22", "matplotlib>=3.5"],
    extras_require={
        # torchvision only downloads MNIST when the IDX files are missing.
        "mnist": ["torchvision"],
        "cupy": ["cupy-cuda12x"],
        # NVRTC (no GPU needed) lets the tests compile the kernels exactly as CuPy does on the GPU.
        "test": ["pytest", "hypothesis", "nvidia-cuda-nvrtc; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
)
