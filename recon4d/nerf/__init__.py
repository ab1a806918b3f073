"""Renderers trained from posed images and from recon4d scenes (`recon4d nerf`).

Two families share this package and its data readers (`recon4d.nerf.data`):
generalizable NeRF with mixture-of-experts (GNT-MOVE) with its robustness test (NeRFool), and one-pass
neural light fields distilled from a fitted scene (MobileR2L, NeRDF).
"""
