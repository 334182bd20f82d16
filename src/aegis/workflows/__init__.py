"""User workflows: resolve inputs, compute through the core, assemble and write a run."""
