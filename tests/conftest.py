"""Test-suite settings: fast mode on, so nothing tries the network and everything stays small."""

import os

os.environ["DDPM_FAST"] = "1"
