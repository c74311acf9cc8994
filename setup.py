"""Builds the shm lane's C hot path; all project metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rtt_fabric._ring",
            ["fabric/rtt_fabric/_ring.c"],
            # No -msse4.2: the crc32 instruction is enabled per function, so the module still
            # loads on CPUs without it and falls back to the table-driven crc32c.
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ],
)
