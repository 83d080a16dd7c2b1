"""Notebooks run as tests (nbval) in fast mode: the kernels inherit DDPM_FAST=1 from this process."""

import os

os.environ["DDPM_FAST"] = "1"
