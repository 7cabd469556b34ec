"""R2D3 Studio's Gradio interface. It calls the engine; the engine never imports it."""
