"""The generator of the bundled sample data (toolformer/data/): hand-written facts and templates.

    python -m scripts.sample_data.make_samples [--check]
"""
