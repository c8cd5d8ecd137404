"""kiln's intermediate representation."""
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.printer import print_graph
from kiln.ir.verify import GraphVerifyError, verify

__all__ = ["Graph", "Node", "Value", "print_graph", "verify", "GraphVerifyError"]
