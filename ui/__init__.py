"""Front ends: the ``remask`` command line, the Textual TUI and the Gradio demo."""
