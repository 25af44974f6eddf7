"""Command-line entry points (the whole data flow: upstream's ``train_ppo_ray`` with ``--darts.*`` wired in).
Importing this package imports nothing heavy."""
