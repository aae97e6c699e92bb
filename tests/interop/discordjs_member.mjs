// @discordjs/voice as the other member of a DAVE call, for tests/test_dave_interop_discordjs.py.
//
//     node tests/interop/discordjs_member.mjs     (needs: cd bench/discordjs && npm ci, or
//     FASTVOICE_DISCORDJS_DIR naming a directory where npm ci was run on that package.json)
//
// The first line on stdin is the join configuration (JSON): guild_id, channel_id, user_id,
// session_id, token, endpoint (host:port, served over wss://; start Node with
// NODE_EXTRA_CA_CERTS naming the server's certificate) and peers (user ids to listen to).
// The member joins through @discordjs/voice's own networking: joinVoiceChannel with an
// adapter that answers its op 4 with those voice state and server updates, as the bot's
// main gateway would. Its DAVE is @discordjs/voice's (on @snazzah/davey).
//
// Later stdin lines are commands, one JSON object each; stdout carries one JSON object per
// line, each with an "event":
//   {"cmd": "play", "frames": [base64...]}   plays the Opus frames with an AudioPlayer
//                                            -> {"event": "played"} once the player is idle
//   {"cmd": "verification", "user_id": "..."} -> {"event": "verification", "code": ...}
//   {"cmd": "report"}   -> {"event": "report", "frames": {user: [base64...]}, "log": [...]}
//   {"cmd": "leave"}    destroys the connection and exits
// Unasked: {"event": "ready"} when the connection is ready, {"event": "code", "code": ...}
// each time the voice privacy code changes (a new epoch), and {"event": "speaker", "user_id": ...}
// when an op 5 first maps a user's SSRC (the receiver drops audio from SSRCs it cannot map).
//
// "frames" is what the receiver's stream for each peer delivered (silence frames included).
// "log" is the order of what happened: ["packet", user, rtp sequence, delivered] for each
// audio packet from a peer, and ["keys", transition id] when the DAVE session processed a
// commit or welcome (its debug lines say so), so the test can tell when an undelivered
// packet arrived.

import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const PACKAGE_DIR = process.env.FASTVOICE_DISCORDJS_DIR || join(HERE, '..', '..', 'bench', 'discordjs');
const require = createRequire(join(PACKAGE_DIR, 'package.json'));
const voice = require('@discordjs/voice');

const RTP_OPUS = 0x78;

function emit(event) {
	process.stdout.write(`${JSON.stringify(event)}\n`);
}

function fail(error) {
	emit({ event: 'error', message: String(error?.stack ?? error) });
	process.exit(1);
}

/** The bot's main gateway for this one voice connection: op 4 in, the two dispatches out. */
function mainGateway(config) {
	return (methods) => ({
		sendPayload(payload) {
			if (payload.op !== 4 || payload.d.channel_id === null) return true;
			setImmediate(() => {
				methods.onVoiceStateUpdate({
					guild_id: config.guild_id,
					channel_id: config.channel_id,
					user_id: config.user_id,
					session_id: config.session_id,
					deaf: false,
					mute: false,
					self_deaf: payload.d.self_deaf,
					self_mute: payload.d.self_mute,
					self_video: false,
					suppress: false,
					request_to_speak_timestamp: null,
				});
				methods.onVoiceServerUpdate({ token: config.token, guild_id: config.guild_id, endpoint: config.endpoint });
			});
			return true;
		},
		destroy() {},
	});
}

async function main() {
	const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]();
	const first = await lines.next();
	if (first.done) throw new Error('no configuration on stdin');
	const config = JSON.parse(first.value);

	const connection = voice.joinVoiceChannel({
		guildId: config.guild_id,
		channelId: config.channel_id,
		adapterCreator: mainGateway(config),
		selfDeaf: false,
		selfMute: false,
		debug: true,
	});
	const received = {};
	const log = [];
	let current = null; // the audio packet the receiver is handling right now
	let lastCode = null;

	const noteCode = () => {
		const code = connection.voicePrivacyCode ?? null;
		if (code && code !== lastCode) {
			lastCode = code;
			emit({ event: 'code', code });
		}
	};
	connection.on('error', (error) => emit({ event: 'log', message: `error: ${error?.message ?? error}` }));
	connection.on('debug', (line) => {
		const processed = /MLS (?:commit|welcome) processed \(transition id: (\d+)\)/.exec(line);
		if (processed) {
			log.push(['keys', Number(processed[1])]);
			noteCode();
		}
	});
	const codeTimer = setInterval(noteCode, 5);

	await voice.entersState(connection, voice.VoiceConnectionStatus.Ready, 20_000);
	const ssrcUser = (ssrc) => connection.receiver.ssrcMap.get(ssrc)?.userId;
	// The receiver drops audio from an SSRC that no op 5 has named yet: say when one is named.
	connection.receiver.ssrcMap.on('create', (data) => emit({ event: 'speaker', user_id: data.userId }));
	// Around the receiver's own handler: which packet it is given, and whether it delivered it.
	const udp = connection.state.networking.state.udp;
	udp.prependListener('message', (message) => {
		current = null;
		if (message.length < 12 || (message[1] & 0x7f) !== RTP_OPUS) return;
		const user = ssrcUser(message.readUInt32BE(8));
		if (user !== undefined && config.peers.includes(user)) {
			current = { user, sequence: message.readUInt16BE(2), delivered: false };
		}
	});
	udp.on('message', () => {
		if (current) log.push(['packet', current.user, current.sequence, current.delivered]);
		current = null;
	});
	for (const peer of config.peers) {
		received[peer] = [];
		const stream = connection.receiver.subscribe(peer, { end: { behavior: voice.EndBehaviorType.Manual } });
		// What the receiver hands its stream, taken as it is handed (a 'data' listener may
		// run a tick later): the frame, and that the packet in hand was delivered.
		const push = stream.push.bind(stream);
		stream.push = (frame) => {
			if (frame) {
				received[peer].push(Buffer.from(frame).toString('base64'));
				if (current && current.user === peer) current.delivered = true;
			}
			return push(frame);
		};
		stream.on('error', (error) => emit({ event: 'log', message: `receive ${peer}: ${error?.message ?? error}` }));
		stream.resume();
	}
	emit({ event: 'ready' });

	const player = voice.createAudioPlayer({ behaviors: { noSubscriber: voice.NoSubscriberBehavior.Play } });
	player.on('error', (error) => emit({ event: 'log', message: `player: ${error?.message ?? error}` }));
	connection.subscribe(player);

	for (let next = await lines.next(); !next.done; next = await lines.next()) {
		const command = JSON.parse(next.value);
		if (command.cmd === 'play') {
			const frames = command.frames.map((b64) => Buffer.from(b64, 'base64'));
			let index = 0;
			const source = new Readable({
				objectMode: true,
				read() {
					this.push(index < frames.length ? frames[index++] : null);
				},
			});
			player.play(voice.createAudioResource(source, { inputType: voice.StreamType.Opus }));
			await voice.entersState(player, voice.AudioPlayerStatus.Playing, 10_000);
			voice.entersState(player, voice.AudioPlayerStatus.Idle, 600_000).then(
				() => emit({ event: 'played' }),
				fail,
			);
		} else if (command.cmd === 'verification') {
			let code = null;
			try {
				code = await connection.getVerificationCode(command.user_id);
			} catch (error) {
				emit({ event: 'log', message: `verification: ${error?.message ?? error}` });
			}
			emit({ event: 'verification', user_id: command.user_id, code });
		} else if (command.cmd === 'report') {
			emit({ event: 'report', frames: received, log });
		} else if (command.cmd === 'leave') {
			break;
		}
	}
	clearInterval(codeTimer);
	player.stop(true);
	connection.destroy();
	// Let the websocket send its close frame, then go.
	setTimeout(() => process.exit(0), 200);
}

main().catch(fail);
