"""Types every layer uses: Gaussians, cameras, the sampler, the text encoder, atomic file writes."""
