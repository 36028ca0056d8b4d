"""``python -m zapi_channel.emulator``."""

from zapi_channel.emulator.cli import run

run()
