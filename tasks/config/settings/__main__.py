import sys

from tasks.config.settings import markdown_table

sys.stdout.write(markdown_table() + "\n")
