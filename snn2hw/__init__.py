"""snn2hw: train spiking networks in PyTorch, deploy them bit-exactly to Loihi-2-class hardware."""
__version__ = "0.1.0"
