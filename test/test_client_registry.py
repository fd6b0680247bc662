"""Client admission: one client id per namespace, a bounded number of clients, idle expiry."""

import threading

import pytest

from ams_ros.ground.client_registry import Admission, ClientRegistry

NEW = Admission(True, new_client=True)
KNOWN = Admission(True)


def test_first_contact_binds_a_client_to_its_namespace():
    registry = ClientRegistry()
    assert registry.admit('/drone1', 'drone1', 0.0) == NEW
    assert registry.admit('/drone1', 'drone1', 1.0) == KNOWN
    assert registry.namespace_of('drone1') == '/drone1'
    assert registry.clients == ['drone1']


def test_a_client_id_on_another_namespace_is_refused():
    """An EdgeStatus for drone1 on /evil2 must not redirect drone1's patches to /evil2."""
    registry = ClientRegistry()
    registry.admit('/drone1', 'drone1', 0.0)
    assert registry.admit('/evil2', 'drone1', 1.0) == Admission(False, 'wrong-namespace')
    assert registry.namespace_of('drone1') == '/drone1'


def test_a_namespace_hosts_one_client_id():
    """40 ghost ids on /drone1/ams/status make no client."""
    registry = ClientRegistry(max_clients=100)
    registry.admit('/drone1', 'drone1', 0.0)
    for i in range(40):
        assert registry.admit('/drone1', f'ghost{i:03d}', 1.0).reason == 'wrong-namespace'
    assert registry.clients == ['drone1']


def test_start_up_bindings_hold_before_the_drone_is_seen():
    registry = ClientRegistry()
    registry.bind('/drone1', 'drone1')
    assert registry.admit('/evil', 'drone1', 0.0).reason == 'wrong-namespace'
    assert registry.admit('/drone1', 'evil', 0.0).reason == 'wrong-namespace'
    assert registry.clients == []
    assert registry.admit('/drone1', 'drone1', 0.0) == NEW
    registry.bind('/drone1', 'drone1')  # binding again is harmless
    with pytest.raises(ValueError, match='already bound'):
        registry.bind('/drone2', 'drone1')
    with pytest.raises(ValueError, match='already bound'):
        registry.bind('/drone1', 'drone2')


def test_new_clients_stop_at_max_clients_but_configured_drones_keep_their_place():
    registry = ClientRegistry(max_clients=3)
    registry.bind('/drone1', 'drone1')
    assert registry.admit('/a', 'a', 0.0) == NEW
    assert registry.admit('/b', 'b', 0.0) == NEW
    assert registry.admit('/c', 'c', 0.0) == Admission(False, 'too-many-clients')
    assert registry.admit('/drone1', 'drone1', 0.0) == NEW  # its place was kept
    assert registry.admit('/a', 'a', 1.0) == KNOWN  # known clients are never counted again
    one = ClientRegistry(max_clients=1)
    one.bind('/x', 'x')
    with pytest.raises(ValueError, match='max_clients'):
        one.bind('/y', 'y')


def test_ids_this_ground_does_not_serve_are_refused():
    registry = ClientRegistry(owns=lambda client_id: client_id.startswith('mine'))
    assert registry.admit('/d', 'theirs', 0.0) == Admission(False, 'not-ours')
    assert registry.admit('/d', '', 0.0) == Admission(False, 'no-client-id')
    assert registry.admit('/d', 'mine1', 0.0) == NEW


def test_idle_clients_expire_and_free_their_binding():
    registry = ClientRegistry(max_clients=2, idle_timeout_s=60.0)
    registry.bind('/drone1', 'drone1')
    registry.admit('/drone1', 'drone1', 0.0)
    registry.admit('/ghost', 'ghost', 0.0)
    assert registry.admit('/other', 'other', 10.0).reason == 'too-many-clients'
    registry.admit('/drone1', 'drone1', 50.0)  # every accepted message keeps a client alive
    assert registry.expire(60.0) == []
    assert registry.expire(60.5) == ['ghost']
    assert registry.namespace_of('ghost') is None
    assert registry.admit('/other', 'other', 61.0) == NEW  # its place and namespace are free
    assert registry.admit('/ghost', 'ghost2', 61.0).reason == 'too-many-clients'
    # A configured drone is freed too, but keeps its namespace and its place.
    assert registry.expire(200.0) == ['drone1', 'other']
    assert registry.namespace_of('drone1') == '/drone1'
    assert registry.admit('/evil', 'drone1', 201.0).reason == 'wrong-namespace'
    assert registry.admit('/drone1', 'drone1', 201.0) == NEW
    assert registry.admit('/other', 'someone', 201.0) == NEW


@pytest.mark.parametrize('bad', [dict(max_clients=0), dict(max_clients=2.0),
                                 dict(idle_timeout_s=0.0), dict(idle_timeout_s=float('inf'))])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError):
        ClientRegistry(**bad)


def test_admission_and_expiry_from_several_threads_keep_the_bound():
    registry = ClientRegistry(max_clients=8, idle_timeout_s=1.0)

    def contacts(thread):
        for i in range(300):
            registry.admit(f'/ns{thread}_{i}', f'c{thread}_{i}', float(i))
            registry.expire(float(i))

    threads = [threading.Thread(target=contacts, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(registry.clients) <= 8
