"""Training the built-in generator: StyleGAN2's discriminator, losses and loop, and sample quality."""
