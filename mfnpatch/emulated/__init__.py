"""Code that runs inside the emulated aarch64 Python (see mfnpatch/emulator.py): it imports only the standard
library, numpy and ncnn, never mfnpatch."""
