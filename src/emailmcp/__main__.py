from emailmcp.cli import app

app()
