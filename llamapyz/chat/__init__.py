"""The chat prompt: chat templates (`template`, in a bounded Jinja sandbox: `sandbox`), client text kept literal
(`client_text`), tools: their prompts, grammars and the calls in a reply (`tools`).
"""
