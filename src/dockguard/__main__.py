from dockguard.cli import app

app()
