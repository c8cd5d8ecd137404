import pytest

from kiln.ir import Graph, GraphVerifyError, Node, print_graph, verify
from kiln.ir import dtypes


def _chain():
    g = Graph("t")
    x = g.value("x", dtypes.FLOAT32, ("n", 4))
    g.inputs.append(x)
    a = g.make_node("Relu", [x]).outputs[0]
    b = g.make_node("Neg", [a]).outputs[0]
    g.outputs.append(b)
    return g, x, a, b


def test_producer_consumers_and_replace_all_uses():
    g, x, a, b = _chain()
    relu, neg = g.nodes
    assert a.producer() is relu and a.consumers() == [neg]
    a.replace_all_uses_with(x)
    assert neg.inputs[0] is x and a.consumers() == []
    assert set(map(id, x.consumers())) == {id(relu), id(neg)}
    verify(g)


def test_sort_restores_topological_order():
    g, x, a, b = _chain()
    g.nodes.reverse()
    with pytest.raises(GraphVerifyError, match="before it is defined"):
        verify(g)
    g.sort()
    verify(g)
    assert [n.op for n in g.nodes] == ["Relu", "Neg"]


def test_remove_node_detaches_uses():
    g, x, a, b = _chain()
    relu, neg = g.nodes
    neg.set_input(0, x)
    g.remove_node(relu)
    assert x.consumers() == [neg]
    verify(g)


def test_verify_finds_a_second_producer_and_undefined_outputs():
    g, x, a, b = _chain()
    with pytest.raises(ValueError, match="already has a producer"):
        Node("Abs", [x], [a])
    g.outputs.append(g.value("ghost"))
    with pytest.raises(GraphVerifyError, match="never produced"):
        verify(g)


def test_printer_is_stable():
    g, *_ = _chain()
    text = print_graph(g)
    assert text == print_graph(g)
    assert text.splitlines()[1] == "  input  %x: float32[n, 4]"
    assert "= Relu(%x)" in text
