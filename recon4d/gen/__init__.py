"""Text-to-3D on scene latents: a procedural captioned corpus, a fixed-size Gaussian encoder built on the
fit's renderer and losses, and a rectified-flow MM-DiT that generates latents from text (`recon4d gen`)."""
