import os

# Torch's OpenMP threads spin-wait by default, which stalls badly on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
