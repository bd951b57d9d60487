"""Template files of ``avstudio new-plugin`` (``string.Template`` syntax; see app/scaffold.py)."""
