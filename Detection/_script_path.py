"""Lets the detection scripts run as ``python train_imp.py`` from Detection/ (the original's way)
or from the repository root: the root goes first on sys.path, Detection/ itself never (its
modules config, data, model... would shadow top-level modules of the same names)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [ROOT] + [path for path in sys.path if os.path.abspath(path or os.curdir) != HERE]
