import sys

from tasks.config.settings import write_settings_page

write_settings_page(*sys.argv[1:])
