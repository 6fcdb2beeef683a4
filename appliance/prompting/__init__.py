"""From messages to prompt text, and from output text back to messages: templates, thinking,
tool calls."""
