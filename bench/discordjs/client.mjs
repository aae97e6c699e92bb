// @discordjs/voice as a peer in bench/test_bench_connections.py: N VoiceConnections in one
// Node process, each with its own AudioPlayer playing raw Opus frames to a VoiceServer in a
// Python process. Prints one JSON line with the keys bench/connections_client.py uses.
//
//     cd bench/discordjs && npm ci
//     node bench/discordjs/client.mjs N SECONDS
//
// FASTVOICE_PYTHON names the Python that runs bench/voice_server_process.py (default python3).
//
// Two Node processes: this one starts the server, reads its "URL ENDPOINT CA_FILE" line and
// starts itself again as the measured process, with NODE_EXTRA_CA_CERTS set to CA_FILE (Node
// reads that variable only at start-up, and @discordjs/voice opens its websockets with no TLS
// option of its own). The measured process stands in for the bot's main gateway only: its
// adapters answer each op 4 with the VOICE_SERVER_UPDATE and VOICE_STATE_UPDATE the gateway
// would send. CPU and RSS are the measured process's; this one only relays the server's report.

import { fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const BOT = '159985870458322944';
const BATCH = 50;

function withTimeout(promise, ms, what) {
	let timer;
	const timeout = new Promise((_, reject) => {
		timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
	});
	return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function exited(proc) {
	return new Promise((resolve) => {
		if (proc.exitCode !== null || proc.signalCode !== null) resolve(proc.exitCode);
		else proc.once('exit', (code) => resolve(code));
	});
}

// -- the measured process ----------------------------------------------------------------

/** An adapterCreator standing in for the main gateway of the bot for one guild. */
function gatewayStandIn(guildId, endpoint) {
	return (methods) => ({
		sendPayload(payload) {
			const d = payload.d;
			if (payload.op !== 4 || d.channel_id === null) return true;
			// In Discord's order: the state first (@discordjs/voice starts connecting on the
			// server update, with the session id the state update carried).
			setImmediate(() => {
				methods.onVoiceStateUpdate({
					guild_id: guildId,
					channel_id: d.channel_id,
					user_id: BOT,
					session_id: `s${guildId}`,
					self_mute: d.self_mute,
					self_deaf: d.self_deaf,
					deaf: false,
					mute: false,
					suppress: false,
					self_video: false,
					request_to_speak_timestamp: null,
				});
				methods.onVoiceServerUpdate({ token: `t${guildId}`, guild_id: guildId, endpoint });
			});
			return true;
		},
		destroy() {},
	});
}

/** `count` copies of one random 120-byte Opus frame, as an object-mode stream. */
function frames(count) {
	const frame = randomBytes(120);
	let left = count;
	return new Readable({
		objectMode: true,
		read() {
			this.push(left-- > 0 ? frame : null);
		},
	});
}

function waitMessage(predicate) {
	return new Promise((resolve) => {
		const onMessage = (message) => {
			if (predicate(message)) {
				process.off('message', onMessage);
				resolve(message);
			}
		};
		process.on('message', onMessage);
	});
}

async function measured(n, seconds) {
	const voice = await import('@discordjs/voice');
	const endpoint = process.env.FASTVOICE_BENCH_ENDPOINT;
	const debug = process.env.FASTVOICE_BENCH_DEBUG === '1';
	const rssBefore = process.memoryUsage().rss;
	const connections = [];
	let opened = 0;
	const openedAt = performance.now();
	for (let start = 0; start < n; start += BATCH) {
		const ready = [];
		for (let i = start; i < Math.min(n, start + BATCH); i++) {
			const guildId = String(1_000_000 + 10 * i);
			const connection = voice.joinVoiceChannel({
				guildId,
				channelId: String(1_000_001 + 10 * i),
				adapterCreator: gatewayStandIn(guildId, endpoint),
				selfDeaf: false,
				selfMute: false,
				debug,
			});
			connection.on('error', (error) => console.error(`guild ${guildId}:`, error));
			if (debug) connection.on('debug', (line) => console.error(`guild ${guildId}: ${line}`));
			connections.push(connection);
			ready.push(voice.entersState(connection, voice.VoiceConnectionStatus.Ready, 60_000));
		}
		for (const result of await Promise.allSettled(ready)) {
			if (result.status === 'fulfilled') opened++;
			else console.error('not ready:', result.reason?.message ?? result.reason);
		}
	}
	const openSeconds = (performance.now() - openedAt) / 1000;

	const count = Math.round(seconds * 50);
	const players = [];
	for (const connection of connections) {
		if (connection.state.status !== voice.VoiceConnectionStatus.Ready) continue;
		const player = voice.createAudioPlayer();
		player.on('error', (error) => console.error('player:', error));
		connection.subscribe(player);
		players.push(player);
	}
	const cpuBefore = process.cpuUsage();
	const wallBefore = performance.now();
	const done = [];
	for (const player of players) {
		player.play(voice.createAudioResource(frames(count), { inputType: voice.StreamType.Opus }));
		done.push(voice.entersState(player, voice.AudioPlayerStatus.Idle, seconds * 1000 + 600_000));
	}
	await Promise.all(done);
	const wall = (performance.now() - wallBefore) / 1000;
	const cpuUsage = process.cpuUsage(cpuBefore);
	const rssAfter = process.memoryUsage().rss;
	const cpu = (cpuUsage.user + cpuUsage.system) / 1e6;

	process.send({
		result: {
			opened,
			open_seconds: round(openSeconds, 2),
			stream_seconds: round(wall, 2),
			cpu_seconds: round(cpu, 3),
			cpu_share_of_one_core: round(cpu / wall, 3),
			cpu_us_per_connection_second: round((cpu / wall / Math.max(opened, 1)) * 1e6, 1),
			rss_kib_per_connection: round((rssAfter - rssBefore) / 1024 / n, 1),
			sent: count * players.length,
			peer: `@discordjs/voice ${voice.version}`,
			node: process.version,
		},
	});
	await waitMessage((message) => message === 'destroy');
	for (const player of players) player.stop(true);
	for (const connection of connections) connection.destroy();
	// Let the websockets send their close frames, then leave (nothing else keeps us here).
	setTimeout(() => process.exit(0), 500);
}

// -- the process that starts the server ------------------------------------------------

function round(x, digits) {
	const scale = 10 ** digits;
	return Math.round(x * scale) / scale;
}

function jitterStats(report) {
	let total = 0;
	for (const ssrc of Object.values(report)) total += ssrc.gaps_ms.length;
	const jitter = new Float64Array(total);
	let i = 0;
	let sum = 0;
	for (const ssrc of Object.values(report)) {
		for (const gap of ssrc.gaps_ms) {
			const j = Math.abs(gap - 20.0);
			jitter[i++] = j;
			sum += j;
		}
	}
	jitter.sort();
	const pct = (p) => (total ? jitter[Math.min(total - 1, Math.floor(p * total))] : NaN);
	return {
		jitter_p50_ms: round(pct(0.5), 3),
		jitter_p99_ms: round(pct(0.99), 3),
		jitter_mean_ms: total ? round(sum / total, 3) : null,
	};
}

// Every process this one starts, so that a signal that stops it stops them too.
const children = new Set();

function stopChildrenOn(signal, number) {
	process.on(signal, () => {
		for (const proc of children) if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
		process.exit(128 + number);
	});
}

async function main(n, seconds) {
	for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]]) stopChildrenOn(signal, number);
	const python = process.env.FASTVOICE_PYTHON || 'python3';
	const server = spawn(python, [join(HERE, '..', 'voice_server_process.py'), '--tls'], {
		stdio: ['pipe', 'pipe', 'inherit'],
	});
	children.add(server);
	const serverExit = exited(server);
	const lines = createInterface({ input: server.stdout, crlfDelay: Infinity })[Symbol.asyncIterator]();
	let child;
	try {
		const first = await withTimeout(lines.next(), 60_000, 'the voice server did not start');
		if (first.done) throw new Error('the voice server exited before printing its address');
		const [, endpoint, caFile] = first.value.trim().split(/\s+/);
		child = fork(fileURLToPath(import.meta.url), [String(n), String(seconds)], {
			env: { ...process.env, NODE_EXTRA_CA_CERTS: caFile, FASTVOICE_BENCH_ENDPOINT: endpoint },
			stdio: ['ignore', 2, 2, 'ipc'],
		});
		children.add(child);
		const childExit = exited(child);
		const message = await Promise.race([
			new Promise((resolve) => child.once('message', resolve)),
			childExit.then((code) => {
				throw new Error(`the measured process exited with ${code} before reporting`);
			}),
		]);
		const result = message.result;
		await new Promise((resolve) => setTimeout(resolve, 200));
		server.stdin.write('report\n');
		const line = await withTimeout(lines.next(), 120_000, 'the voice server did not report');
		const report = JSON.parse(line.value);
		child.send('destroy');
		await withTimeout(childExit, 30_000, 'the measured process did not exit');
		let received = 0;
		for (const ssrc of Object.values(report)) received += ssrc.packets;
		const output = { ...result, received, ...jitterStats(report) };
		// Same key order as bench/connections_client.py, the peer's own keys last.
		const { peer, node, ...rest } = output;
		process.stdout.write(`${JSON.stringify({ ...rest, peer, node })}\n`);
	} finally {
		if (child && child.exitCode === null && child.signalCode === null) child.kill();
		server.stdin.end();
		try {
			await withTimeout(serverExit, 20_000, 'the voice server did not exit');
		} catch {
			server.kill();
		}
	}
}

const [n, seconds] = [Number(process.argv[2] ?? 10), Number(process.argv[3] ?? 10)];
if (process.send) {
	// The measured process goes when the process that started it does, however that ended.
	process.on('disconnect', () => process.exit(1));
	await measured(n, seconds);
} else {
	try {
		await main(n, seconds);
	} catch (error) {
		console.error(error);
		process.exitCode = 1;
	}
}
