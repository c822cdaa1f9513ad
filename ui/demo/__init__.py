"""The Gradio web demo (``remask demo``). Import ``ui.demo.app`` for ``build_app``; this package stays light."""
