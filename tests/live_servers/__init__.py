"""Real live-source servers for the reconnect tests, run as their own processes.

rtsp_server.py needs Debian's /usr/bin/python3 (python3-gi does not load in the
virtualenv); tests drive it through tests/live_sources.py.
"""
