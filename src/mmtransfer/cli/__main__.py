"""``python -m mmtransfer.cli``, as the ``mmtransfer`` command."""

from mmtransfer.cli import main

main()
