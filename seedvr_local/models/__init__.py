"""The SeedVR2 networks: `nadit.NaDiT` (3B and 7B) and `vae.VideoAutoencoder`."""
