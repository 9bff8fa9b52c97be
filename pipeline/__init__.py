"""avfuse's runtime: I/O, alignment, records and the Ray layer."""

import os

# avfuse joins or starts Ray itself (pipeline/compute/ray_init.py). Ray's auto-connect would, on the
# first Ray call after a lost Ray Client connection, quietly join whatever cluster this host
# last knew or start a new local one inside the consumer; read when ray is imported.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
