"""One module per tab: its callbacks, then its layout and wiring; `ui/layout.py` composes them."""
