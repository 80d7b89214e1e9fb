"""The probe runtime: load BPF with bcc, attach it with uprobe_multi links, read results, detach.

``kernel`` says whether this machine can do it at all; ``links`` creates and closes the links.
"""
