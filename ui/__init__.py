"""The page (the only package that imports gradio): `layout.build_app` composes `tabs/` over the engine in `tuning/`."""
