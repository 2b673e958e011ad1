"""``python -m llm_quant.cli``: the same app as the ``llm-quant`` console script."""

from llm_quant.cli import main

if __name__ == "__main__":
    main()
