"""The `gpuhook` command line: main.py holds the group, dry-run and hook; each other command
group lives in its own module and is registered by main.py."""
