#!/usr/bin/env python3
"""A Home Assistant house against a running Moat, with paho-mqtt.

Home Assistant's MQTT client (paho, 3.1.1, random id, will and birth on
homeassistant/status) and imitations of Zigbee2MQTT, an ESPHome node, a
Tasmota device, Frigate, Z-Wave JS UI and two people connect with the
sample passwd/aclfile. Home Assistant starts on MQTT 3.1.1, is stopped
without DISCONNECT and starts again on MQTT 5 with subscription
identifiers. The script records what each client saw and prints one JSON
object; the Go test makes the assertions.

Input (stdin, JSON): {"host": "127.0.0.1", "port": 1883, "passwords": {user: password}}.
Works with paho-mqtt 1.6 (Debian) and 2.x (Home Assistant's).
"""

import json
import random
import socket
import sys
import threading
import time
import traceback

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

V2 = hasattr(mqtt, "CallbackAPIVersion")
WAIT = 15.0  # seconds for any single expected event

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

COMPONENTS = (
    "alarm_control_panel binary_sensor button camera climate cover date datetime "
    "device_automation device_tracker event fan humidifier image lawn_mower light lock "
    "notify number scene siren select sensor switch tag text time update vacuum valve "
    "water_heater"
).split()

# Home Assistant's discovery filters, in its order (discovery.py, 2026).
DISCOVERY = (
    [f"homeassistant/{c}/+/config" for c in COMPONENTS]
    + [f"homeassistant/{c}/+/+/config" for c in COMPONENTS]
    + ["homeassistant/device/+/config", "homeassistant/device/+/+/config"]
)
# Integration discovery (homeassistant/generated/mqtt.py): wildcards get
# their own SUBSCRIBE, exact topics go into the bulk one.
INTEGRATION_WILDCARDS = [
    "arwn/#", "drop_connect/discovery/#", "dsmr/#", "esphome/discover/#",
    "fully/deviceInfo/+", "inels/status/#", "pglab/discovery/#",
    "cloudapp/QBUSMQTTGW/+/state", "tasmota/discovery/#",
]
INTEGRATION_EXACT = [
    "/greencell/broadcast/device", "cloudapp/QBUSMQTTGW/state", "cloudapp/QBUSMQTTGW/config",
]
# Entity topics from the devices' discovery payloads.
ENTITY_TOPICS = [
    "zigbee2mqtt/bridge/state", "zigbee2mqtt/lamp", "zigbee2mqtt/lamp/availability",
    "zigbee2mqtt/bridge/info", "livingroom/status", "livingroom/sensor/temperature/state",
    "livingroom/switch/relay/state", "tele/tasmota_1A2B3C/LWT", "tele/tasmota_1A2B3C/STATE",
    "tele/tasmota_1A2B3C/SENSOR", "stat/tasmota_1A2B3C/RESULT", "stat/tasmota_1A2B3C/POWER",
    "frigate/available", "frigate/front/person", "frigate/front/detect/state",
    "frigate/front/motion", "frigate/front/review_status", "frigate/tracked_object_update",
]

LIGHT_CONFIG = "homeassistant/light/0x00158d0001a2b3c4/light/config"
TRIGGER_CONFIG = "homeassistant/device_automation/0x00158d0001a2b3c4/action_single/config"
ESPHOME_CONFIG = "homeassistant/sensor/livingroom/temperature/config"

# Retained messages the devices leave before Home Assistant starts.
RETAINED_AT_START = [
    LIGHT_CONFIG, TRIGGER_CONFIG, ESPHOME_CONFIG,
    "tasmota/discovery/A4CF121A2B3C/config", "tasmota/discovery/A4CF121A2B3C/sensors",
    "esphome/discover/livingroom", "zigbee2mqtt/bridge/state", "livingroom/status",
    "livingroom/sensor/temperature/state", "tele/tasmota_1A2B3C/LWT", "frigate/available",
    "frigate/front/detect/state",
]

COMMANDS = [  # (topic, payload, device that must receive it)
    ("zigbee2mqtt/lamp/set", '{"state":"ON"}', "zigbee2mqtt"),
    ("zigbee2mqtt/lamp/set/brightness", "128", "zigbee2mqtt"),
    ("zigbee2mqtt/bridge/request/permit_join", '{"value":true,"time":254}', "zigbee2mqtt"),
    ("livingroom/switch/relay/command", "ON", "livingroom"),
    ("cmnd/tasmota_1A2B3C/POWER", "ON", "tasmota"),
    ("frigate/front/detect/set", "ON", "frigate"),
]


def code(rc):
    """A paho return/reason code (int or ReasonCode) as an int."""
    return int(getattr(rc, "value", rc))


def base62_id():
    n = random.getrandbits(128)
    s = ""
    while n:
        n, r = divmod(n, 62)
        s = BASE62[r] + s
    return s.rjust(22, "0")


class Peer:
    """One MQTT client with everything it saw, guarded by a condition."""

    def __init__(self, name, client_id, user, password, protocol=mqtt.MQTTv311,
                 clean=True, keepalive=60, will=None, ca_file=None):
        self.name, self.user, self.password = name, user, password
        self.keepalive, self.will, self.protocol = keepalive, will, protocol
        kw = {"client_id": client_id, "protocol": protocol, "reconnect_on_failure": False}
        if protocol != mqtt.MQTTv5:
            kw["clean_session"] = clean
        if ca_file:
            kw["transport"] = "websockets"
        if V2:
            self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
        else:
            self.c = mqtt.Client(**kw)
        if ca_file:
            # As Home Assistant: ws_path "/", a custom CA, hostname checked.
            self.c.ws_set_options(path="/")
            self.c.tls_set(ca_certs=ca_file)
        self.cv = threading.Condition()
        self.connack = None
        self.connack_props = None
        self.subids = {}  # MQTT 5: granted filter -> subscription identifier
        self.connected = False
        self.subacks = {}
        self.pubacks = {}
        self.unsubacks = set()
        self.msgs = []  # (topic, payload, retain, qos, monotonic time)
        self.handlers = []
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message

    # Callbacks: *args covers paho 1.x (v3 and v5 forms) and 2.x VERSION2.
    def _on_connect(self, _c, _u, _flags, rc, *rest):
        with self.cv:
            self.connack_props = rest[0] if rest else None
            self.connack = code(rc)
            self.connected = self.connack == 0
            self.cv.notify_all()

    def _on_subscribe(self, _c, _u, mid, codes, *_):
        with self.cv:
            self.subacks[mid] = [code(x) for x in codes]
            self.cv.notify_all()

    def _on_publish(self, _c, _u, mid, *rest):
        with self.cv:
            self.pubacks[mid] = code(rest[0]) if V2 and rest else None
            self.cv.notify_all()

    def _on_unsubscribe(self, _c, _u, mid, *_):
        with self.cv:
            self.unsubacks.add(mid)
            self.cv.notify_all()

    def _on_disconnect(self, *_):
        with self.cv:
            self.connected = False
            self.cv.notify_all()

    def _on_message(self, _c, _u, m):
        payload = m.payload.decode("utf-8", "replace")
        props = getattr(m, "properties", None)
        ids = sorted(getattr(props, "SubscriptionIdentifier", None) or []) if props else []
        with self.cv:
            self.msgs.append((m.topic, payload, bool(m.retain), m.qos, time.monotonic(), ids))
            self.cv.notify_all()
        for h in self.handlers:
            h(m.topic, payload)

    def wait(self, pred, timeout=WAIT):
        with self.cv:
            return self.cv.wait_for(pred, timeout)

    def connect(self, host, port):
        self.c.username_pw_set(self.user, self.password)
        if self.will:
            topic, payload, qos, retain = self.will
            self.c.will_set(topic, payload, qos, retain)
        self.c.connect(host, port, self.keepalive)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None)
        return self.connack

    def subscribe(self, filters, qos=0, sub_id=None):
        """One SUBSCRIBE packet; returns its SUBACK codes in filter order."""
        kw = {}
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
            kw["properties"] = props
        rc, mid = self.c.subscribe([(f, qos) for f in filters], **kw)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        if not self.wait(lambda: mid in self.subacks):
            return None
        codes = self.subacks[mid]
        if sub_id is not None:
            for f, c in zip(filters, codes):
                if c < 0x80:
                    self.subids[f] = sub_id
        return codes

    def unsubscribe(self, filters):
        _, mid = self.c.unsubscribe(filters)
        return self.wait(lambda: mid in self.unsubacks)

    def publish(self, topic, payload, qos=0, retain=False):
        """Publishes and waits for completion (PUBACK / PUBCOMP at QoS > 0).
        Returns (completed, v5 reason code or None)."""
        info = self.c.publish(topic, payload, qos, retain)
        ok = self.wait(lambda: info.mid in self.pubacks)
        return ok, self.pubacks.get(info.mid)

    def mark(self):
        with self.cv:
            return len(self.msgs)

    def since(self, mark, topic=None):
        with self.cv:
            return [m for m in self.msgs[mark:] if topic is None or m[0] == topic]

    def wait_msg(self, topic, payload=None, mark=0, timeout=WAIT):
        def seen():
            return any(m[0] == topic and (payload is None or m[1] == payload) for m in self.msgs[mark:])
        return self.wait(seen, timeout)

    def quiet(self, still=0.5, most=5.0):
        """Waits until no message arrived for `still` seconds (at most `most`)."""
        end = time.monotonic() + most
        while time.monotonic() < end:
            n = self.mark()
            time.sleep(still)
            if self.mark() == n:
                return

    def kill(self):
        """Closes the socket without DISCONNECT, as Home Assistant stops;
        returns when it closed."""
        self.c.loop_stop()
        s = self.c.socket()
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        return time.monotonic()

    def disconnect(self):
        self.c.disconnect()
        self.c.loop_stop()


class House:
    def __init__(self, cfg):
        self.host, self.port, self.pw = cfg["host"], cfg["port"], cfg["passwords"]
        # Without a WSS listener (wss_port absent) the restart uses TCP.
        self.wss_port, self.ca_file = cfg.get("wss_port"), cfg.get("ca_file")
        self.out = {"paho": getattr(paho.mqtt, "__version__", "?"), "callback_api": 2 if V2 else 1}
        self.probe_n = 0

    def peer(self, name, client_id, user, **kw):
        return Peer(name, client_id, user, self.pw[user], **kw)

    def probe(self, p, topic):
        """A round trip through Moat on p's own subscription: anything that
        was routed to p before it has been delivered once this returns."""
        time.sleep(0.3)
        self.probe_n += 1
        payload = f"probe-{self.probe_n}"
        m = p.mark()
        p.publish(topic, payload, qos=1)
        return p.wait_msg(topic, payload, mark=m)

    # Fixtures: the devices, started before Home Assistant.
    def devices(self):
        out = self.out.setdefault("devices", {})

        z = self.peer("zigbee2mqtt", "mqttjs_1a2b3c4d", "zigbee2mqtt",
                      will=("zigbee2mqtt/bridge/state", '{"state":"offline"}', 1, True))
        self.z2m = z

        def z2m_handler(topic, payload):
            if topic == "homeassistant/status" and payload == "online":
                # Zigbee2MQTT waits 30 s after the birth; shortened here.
                threading.Timer(0.3, lambda: (
                    z.c.publish("zigbee2mqtt/bridge/state", '{"state":"online"}', 1, True),
                    z.c.publish("zigbee2mqtt/lamp", '{"state":"OFF"}' if not z.lamp_on else '{"state":"ON"}', 0, False),
                )).start()
            elif topic == "zigbee2mqtt/lamp/set":
                z.lamp_on = '"ON"' in payload
                z.c.publish("zigbee2mqtt/lamp", '{"state":"ON"}' if z.lamp_on else '{"state":"OFF"}', 0, False)
        z.lamp_on = False
        z.handlers.append(z2m_handler)
        d = out["zigbee2mqtt"] = {"connack": z.connect(self.host, self.port)}
        d["online_pub"] = z.publish("zigbee2mqtt/bridge/state", '{"state":"online"}', 1, True)[0]
        d["subscribe_tree_status"] = z.subscribe(["zigbee2mqtt/#", "homeassistant/status"])
        d["subscribe_discovery_scan"] = z.subscribe(["homeassistant/#"])
        time.sleep(0.5)  # Zigbee2MQTT reads retained discovery for 5 s
        d["unsubscribe_scan"] = z.unsubscribe(["homeassistant/#"])
        d["light_config_pub"] = z.publish(LIGHT_CONFIG, json.dumps({
            "name": None, "unique_id": "0x00158d0001a2b3c4_light_zigbee2mqtt",
            "state_topic": "zigbee2mqtt/lamp", "command_topic": "zigbee2mqtt/lamp/set",
            "availability": [{"topic": "zigbee2mqtt/bridge/state"}], "schema": "json"}), 1, True)[0]
        d["trigger_config_pub"] = z.publish(TRIGGER_CONFIG, json.dumps({
            "automation_type": "trigger", "type": "action", "subtype": "single",
            "topic": "zigbee2mqtt/button/action", "payload": "single"}), 1, True)[0]

        e = self.peer("livingroom", "livingroom-a4cf12aabbcc", "livingroom", clean=False,
                      keepalive=15, will=("livingroom/status", "offline", 0, True))
        self.esp = e
        e.handlers.append(lambda t, p: t == "livingroom/switch/relay/command" and
                          e.c.publish("livingroom/switch/relay/state", p, 0, True))
        d = out["livingroom"] = {"connack": e.connect(self.host, self.port)}
        d["status_pub"] = e.publish("livingroom/status", "online", 0, True)[0]
        d["subscribe"] = e.subscribe(["livingroom/switch/relay/command", "esphome/discover",
                                      "esphome/ping/livingroom"])
        d["subscribe_probe"] = e.subscribe(["livingroom/probe"])  # test plumbing only
        d["discovery_pub"] = e.publish(ESPHOME_CONFIG, json.dumps({
            "name": "Temperature", "state_topic": "livingroom/sensor/temperature/state",
            "availability_topic": "livingroom/status", "unique_id": "livingroomsensortemperature"}),
            0, True)[0]
        d["discover_pub"] = e.publish("esphome/discover/livingroom", '{"ip":"127.0.0.1"}', 2, True)[0]
        d["state_pub"] = e.publish("livingroom/sensor/temperature/state", "21.5", 0, True)[0]

        t = self.peer("tasmota", "DVES_1A2B3C", "tasmota_1A2B3C",
                      will=("tele/tasmota_1A2B3C/LWT", "Offline", 1, True))
        self.tas = t

        def tas_handler(topic, payload):
            if topic == "cmnd/tasmota_1A2B3C/POWER" and payload:
                t.c.publish("stat/tasmota_1A2B3C/RESULT", json.dumps({"POWER": payload}), 0, False)
                t.c.publish("stat/tasmota_1A2B3C/POWER", payload, 0, False)
        t.handlers.append(tas_handler)
        d = out["tasmota"] = {"connack": t.connect(self.host, self.port)}
        d["lwt_pub"] = t.publish("tele/tasmota_1A2B3C/LWT", "Online", 1, True)[0]
        d["subscribe"] = t.subscribe(["cmnd/tasmota_1A2B3C/#", "cmnd/tasmotas/#", "cmnd/DVES_1A2B3C_fb/#"])
        d["empty_power_pub"] = t.publish("cmnd/tasmota_1A2B3C/POWER", "", 0, False)[0]
        d["discovery_pub"] = all([
            t.publish("tasmota/discovery/A4CF121A2B3C/config", '{"ip":"127.0.0.1","dn":"Tasmota"}', 0, True)[0],
            t.publish("tasmota/discovery/A4CF121A2B3C/sensors", '{"sn":{}}', 0, True)[0],
        ])

        f = self.peer("frigate", "frigate", "frigate", will=("frigate/available", "offline", 1, True))
        self.frigate = f
        f.handlers.append(lambda tp, p: tp == "frigate/front/detect/set" and
                          f.c.publish("frigate/front/detect/state", p, 0, True))
        d = out["frigate"] = {"connack": f.connect(self.host, self.port)}
        d["available_pub"] = f.publish("frigate/available", "online", 1, True)[0]
        d["subscribe"] = f.subscribe(["frigate/#"])
        d["state_pub"] = f.publish("frigate/front/detect/state", "OFF", 0, True)[0]

        w = self.peer("zwave", "ZWAVE_GATEWAY-zwave-js-ui", "zwave")
        self.zwave = w
        d = out["zwave"] = {"connack": w.connect(self.host, self.port)}
        d["subscribe"] = w.subscribe(["homeassistant/status", "zwave/_CLIENTS/ZWAVE_GATEWAY-zwave-js-ui/api/#"])
        d["subscribe_own"] = w.subscribe(["zwave/#"])

        a = self.peer("alice", "alice-laptop", "alice", protocol=mqtt.MQTTv5)
        self.alice = a
        d = out["alice"] = {"connack": a.connect(self.host, self.port)}
        d["notes_pub"] = a.publish("alice/notes", "private", 1, True)[0]

        for p in (z, e, t, f, w, a):
            out[p.name]["connected"] = p.connected

    def ha_start(self, key, expect, v5=False, wss=False):
        """Home Assistant's start: connect, subscribe as it does, birth.
        With MQTT 5 it tags exact topics with subscription identifier 1
        and each wildcard filter with its own, and routes by them."""
        ha = self.peer("homeassistant", base62_id(), "homeassistant",
                       protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                       will=("homeassistant/status", "offline", 0, False),
                       ca_file=self.ca_file if wss else None)
        r = self.out[key] = {"client_id_len": len(ha.c._client_id), "protocol": 5 if v5 else 4,
                             "transport": "websockets+tls" if wss else "tcp"}
        r["connack"] = ha.connect(self.host, self.wss_port if wss else self.port)
        if v5:
            r["subid_available"] = getattr(ha.connack_props, "SubscriptionIdentifierAvailable", None)
        next_id = iter(range(2, 1000))
        sent = answered = 0
        r["discovery"] = {}
        for f in DISCOVERY:
            codes = ha.subscribe([f], sub_id=next(next_id) if v5 else None)
            sent += 1
            answered += codes is not None
            r["discovery"][f] = codes[0] if codes else None
        r["integration"] = {}
        for f in INTEGRATION_WILDCARDS:
            codes = ha.subscribe([f], sub_id=next(next_id) if v5 else None)
            sent += 1
            answered += codes is not None
            r["integration"][f] = codes[0] if codes else None
        bulk = INTEGRATION_EXACT + ENTITY_TOPICS
        codes = ha.subscribe(bulk, sub_id=1 if v5 else None)
        sent += 1
        answered += codes is not None
        r["bulk"] = [{"filter": f, "code": c} for f, c in zip(bulk, codes or [])]
        r["subscribe_packets"], r["subacks"] = sent, answered

        # Wait for the retained messages expected, then for quiet: Home
        # Assistant's discovery cooldown, shortened.
        ha.wait(lambda: set(expect) <= {m[0] for m in ha.msgs if m[2]})
        ha.quiet()
        retained = {}
        for topic, _, ret, _, _, _ in ha.since(0):
            if ret:
                retained[topic] = retained.get(topic, 0) + 1
        r["retained"] = retained
        r["alice_seen"] = any(m[0].startswith("alice/") for m in ha.since(0))

        zm, wm, hm = self.z2m.mark(), self.zwave.mark(), ha.mark()
        ha.publish("homeassistant/status", "online", 0, False)
        r["birth_to_zigbee2mqtt"] = self.z2m.wait_msg("homeassistant/status", "online", mark=zm)
        r["birth_to_zwave"] = self.zwave.wait_msg("homeassistant/status", "online", mark=wm)
        r["after_birth_bridge_state"] = ha.wait_msg("zigbee2mqtt/bridge/state", '{"state":"online"}', mark=hm)
        r["after_birth_lamp"] = ha.wait_msg("zigbee2mqtt/lamp", mark=hm)
        r["after_birth_lamp_retain"] = [m[2] for m in ha.since(hm, "zigbee2mqtt/lamp")]
        r["connected"] = ha.connected
        if v5:
            # Every message must carry the identifiers of the filters it matched.
            r["subid_checked"] = len(ha.since(0))
            r["subid_mismatch"] = [
                {"topic": t, "retain": ret, "got": ids, "want": want}
                for t, _, ret, _, _, ids in ha.since(0)
                for want in [sorted(i for f, i in ha.subids.items() if mqtt.topic_matches_sub(f, t))]
                if ids != want]
        return ha

    def commands(self, ha):
        r = self.out["commands"] = {}
        devices = {"zigbee2mqtt": self.z2m, "livingroom": self.esp, "tasmota": self.tas, "frigate": self.frigate}
        marks = {n: p.mark() for n, p in devices.items()}
        hm = ha.mark()
        for topic, payload, _ in COMMANDS:
            ha.publish(topic, payload, 0, False)
        for topic, payload, dev in COMMANDS:
            p = devices[dev]
            p.wait_msg(topic, payload, mark=marks[dev])
            self.probe(p, {"zigbee2mqtt": "zigbee2mqtt/probe/set", "livingroom": "livingroom/probe",
                           "tasmota": "cmnd/tasmota_1A2B3C/probe", "frigate": "frigate/probe"}[dev])
            r[topic] = sum(1 for m in p.since(marks[dev], topic) if m[1] == payload)
        r["lamp_state_on_to_ha"] = ha.wait_msg("zigbee2mqtt/lamp", '{"state":"ON"}', mark=hm)
        r["relay_state_to_ha"] = ha.wait_msg("livingroom/switch/relay/state", "ON", mark=hm)
        r["tasmota_power_to_ha"] = ha.wait_msg("stat/tasmota_1A2B3C/POWER", "ON", mark=hm)
        r["frigate_state_to_ha"] = ha.wait_msg("frigate/front/detect/state", "ON", mark=hm)

    def denials(self, ha):
        r = self.out["denials"] = {}
        zm = self.z2m.mark()
        # Home Assistant must not fake Zigbee2MQTT's availability; the
        # denial must not disconnect it (3.1.1: ack and drop).
        for qos in (0, 1, 2):
            r[f"ha_forge_bridge_state_qos{qos}_completed"] = ha.publish(
                "zigbee2mqtt/bridge/state", f"forged-by-ha-{qos}", qos, False)[0]
        ha.publish("zigbee2mqtt/probe/set", "after-forgery", 0, False)
        r["marker_to_zigbee2mqtt"] = self.z2m.wait_msg("zigbee2mqtt/probe/set", "after-forgery", mark=zm)
        r["ha_forgery_reached_zigbee2mqtt"] = any(m[1].startswith("forged-by-ha") for m in self.z2m.since(zm))
        r["ha_connected_after_forgery"] = ha.connected
        codes = ha.subscribe(["#"])
        r["ha_subscribe_hash"] = codes[0] if codes else None
        r["ha_connected_after_hash"] = ha.connected

        # Zigbee2MQTT must not fake Home Assistant's birth.
        wm = self.zwave.mark()
        r["z2m_forge_status_completed"] = self.z2m.publish("homeassistant/status", "forged-by-z2m", 1, False)[0]
        self.probe(self.zwave, "zwave/probe")
        r["z2m_forgery_reached_zwave"] = any(m[1] == "forged-by-z2m" for m in self.zwave.since(wm))
        r["z2m_connected"] = self.z2m.connected

        # An ESPHome node defines entities for its own node id only.
        hm = ha.mark()
        self.esp.publish("homeassistant/sensor/kitchen/x/config", '{"name":"fake"}', 1, True)
        self.probe(ha, "homeassistant/sensor/probe/config")
        r["esphome_cross_node_reached_ha"] = bool(ha.since(hm, "homeassistant/sensor/kitchen/x/config"))
        r["esphome_connected"] = self.esp.connected

        # A person (MQTT 5): no discovery writes, no device trees.
        a = self.alice
        hm = ha.mark()
        ok, reason = a.publish("homeassistant/switch/evil/config", '{"command_topic":"cmnd/tasmotas/POWER"}', 1, True)
        r["alice_forged_discovery_completed"], r["alice_forged_discovery_reason"] = ok, reason
        self.probe(ha, "homeassistant/sensor/probe/config")
        r["alice_forgery_reached_ha"] = bool(ha.since(hm, "homeassistant/switch/evil/config"))
        r["alice_subscribe"] = dict(zip(["#", "zigbee2mqtt/#", "homeassistant/#", "alice/#"],
                                        a.subscribe(["#", "zigbee2mqtt/#", "homeassistant/#", "alice/#"]) or []))
        r["alice_own_retained"] = a.wait_msg("alice/notes", "private")
        r["alice_connected"] = a.connected

        # Bob (3.1.1) under pattern %u/# only: no reading, no commanding.
        b = self.peer("bob", "bob-phone", "bob")
        r["bob_connack"] = b.connect(self.host, self.port)
        r["bob_subscribe"] = dict(zip(["zigbee2mqtt/#", "zigbee2mqtt/lamp", "homeassistant/status", "bob/#"],
                                      b.subscribe(["zigbee2mqtt/#", "zigbee2mqtt/lamp", "homeassistant/status", "bob/#"]) or []))
        zm = self.z2m.mark()
        r["bob_command_completed"] = b.publish("zigbee2mqtt/lamp/set", "forged-by-bob", 1, False)[0]
        self.probe(self.z2m, "zigbee2mqtt/probe/get")
        r["bob_command_reached_zigbee2mqtt"] = any(m[1] == "forged-by-bob" for m in self.z2m.since(zm))
        r["bob_saw"] = sorted({m[0] for m in b.since(0)})
        r["bob_connected"] = b.connected
        b.disconnect()

    def restart(self, ha):
        """Home Assistant stops (socket closed, no DISCONNECT) and starts again."""
        r = self.out["restart"] = {}
        zm, wm = self.z2m.mark(), self.zwave.mark()
        t0 = ha.kill()
        r["will_to_zigbee2mqtt"] = self.z2m.wait_msg("homeassistant/status", "offline", mark=zm)
        r["will_to_zwave"] = self.zwave.wait_msg("homeassistant/status", "offline", mark=wm)
        got = self.zwave.since(wm, "homeassistant/status")
        if got:
            r["will_retain"], r["will_qos"] = got[0][2], got[0][3]
            r["will_latency_ms"] = round((got[0][4] - t0) * 1000, 1)

        zm = self.z2m.mark()
        # The ESPHome node retained its relay state after the command.
        ha2 = self.ha_start("ha_restarted", RETAINED_AT_START + ["livingroom/switch/relay/state"],
                            v5=True, wss=self.wss_port is not None)
        r["zigbee2mqtt_saw_birth"] = self.z2m.wait_msg("homeassistant/status", "online", mark=zm)
        # The discovery filters of Home Assistant 2021-2024.
        r["legacy_discovery"] = [
            (ha2.subscribe(["homeassistant/+/+/config"], sub_id=500) or [None])[0],
            (ha2.subscribe(["homeassistant/+/+/+/config"], sub_id=501) or [None])[0],
        ]

        # Deleting the light in Home Assistant's UI clears its discovery.
        r["remove_light_completed"] = ha2.publish(LIGHT_CONFIG, "", 0, True)[0]
        self.probe(ha2, "homeassistant/sensor/probe/config")
        zm = self.z2m.mark()
        light = self.z2m.subscribe(["homeassistant/light/+/+/config"])
        trig = self.z2m.subscribe(["homeassistant/device_automation/+/+/config"])
        r["fresh_subscribe"] = (light or []) + (trig or [])
        r["fresh_trigger_retained"] = self.z2m.wait_msg(TRIGGER_CONFIG, mark=zm)
        r["fresh_light_retained"] = [m[1] for m in self.z2m.since(zm, LIGHT_CONFIG)]
        self.z2m.unsubscribe(["homeassistant/light/+/+/config", "homeassistant/device_automation/+/+/config"])

        # A config-entry reload disconnects properly: no will.
        wm = self.zwave.mark()
        ha2.disconnect()
        time.sleep(0.5)
        self.probe(self.zwave, "zwave/probe")
        r["clean_disconnect_will"] = bool(self.zwave.since(wm, "homeassistant/status"))

    def wrong_password(self):
        r = self.out["wrong_password"] = {}
        for key, proto in (("connack", mqtt.MQTTv311), ("connack_v5", mqtt.MQTTv5)):
            p = Peer("homeassistant", base62_id(), "homeassistant", "not-the-password", protocol=proto)
            r[key] = p.connect(self.host, self.port)
            p.c.loop_stop()
        return r

    def run(self):
        self.devices()
        ha = self.ha_start("ha", RETAINED_AT_START)
        self.commands(ha)
        self.denials(ha)
        self.restart(ha)
        self.wrong_password()
        for p in (self.z2m, self.esp, self.tas, self.frigate, self.zwave, self.alice):
            self.out[p.name + "_connected_at_end"] = p.connected
            p.disconnect()


def main():
    cfg = json.load(sys.stdin)
    house = House(cfg)
    try:
        house.run()
    except Exception:  # report what was gathered; the Go test fails on "error"
        house.out["error"] = traceback.format_exc()
    print(json.dumps(house.out, sort_keys=True))


if __name__ == "__main__":
    main()
