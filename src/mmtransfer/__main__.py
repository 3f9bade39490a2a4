"""python -m mmtransfer: the command line (also under torchrun: torchrun --nproc_per_node 2 -m mmtransfer fit ...)."""

from mmtransfer.cli import main

main()
