"""``python -m zapi_channel``: the same command line as ``zapi-channel``."""

from zapi_channel.setup.cli import run

if __name__ == "__main__":
    run()
