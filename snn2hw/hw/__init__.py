"""Hardware arithmetic models. ``loihi2`` is the single definition of Loihi 2's fixed-point neuron."""
