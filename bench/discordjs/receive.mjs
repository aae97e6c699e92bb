// @discordjs/voice's receiver as a peer in bench/test_bench_receive.py: N VoiceConnections in one
// Node process, each subscribed to the one user the speaking server (bench/receive_server_process.py)
// sends it. Prints one JSON line: the measured process's CPU and RSS, and for each call the packet
// numbers it received with their times; the benchmark computes the figures from it with the same
// code as for the other contenders (bench/receive_common.py).
//
//     cd bench/discordjs && npm ci
//     node bench/discordjs/receive.mjs N SECONDS
//
// FASTVOICE_PYTHON names the Python that runs the server (default python3). As client.mjs, this
// process starts the server and then itself again as the measured process with the server's CA
// trusted (NODE_EXTRA_CA_CERTS is read only at start-up). The server offers AES-256-GCM only: the
// one mode @discordjs/voice decrypts with Node's own crypto (XChaCha20 would need an optional
// package this benchmark does not install). Each subscription is a Readable of Opus packets: the
// packet number is read from the first 4 bytes of each payload, where the server put it.

import { fork, spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const BOT = '159985870458322944';
const BATCH = 50;
const GUILD_BASE = 1_000_000;
// The speaking server numbers its speakers from this id up, in the order of the listeners' guilds.
const SPEAKER_BASE = 900_000_000_000_000_000n;
const MODE = 'aead_aes256_gcm_rtpsize';

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

function nextMessage(proc, predicate) {
	return new Promise((resolve) => {
		const onMessage = (message) => {
			if (predicate(message)) {
				proc.off('message', onMessage);
				resolve(message);
			}
		};
		proc.on('message', onMessage);
	});
}

// -- the measured process ----------------------------------------------------------------

function gatewayStandIn(guildId, endpoint) {
	return (methods) => ({
		sendPayload(payload) {
			const d = payload.d;
			if (payload.op !== 4 || d.channel_id === null) return true;
			setImmediate(() => {
				methods.onVoiceStateUpdate({
					guild_id: guildId, channel_id: d.channel_id, user_id: BOT, session_id: `s${guildId}`,
					self_mute: d.self_mute, self_deaf: d.self_deaf, deaf: false, mute: false, suppress: false,
					self_video: false, request_to_speak_timestamp: null,
				});
				methods.onVoiceServerUpdate({ token: `t${guildId}`, guild_id: guildId, endpoint });
			});
			return true;
		},
		destroy() {},
	});
}

function cpuSeconds() {
	const usage = process.cpuUsage();
	return (usage.user + usage.system) / 1e6;
}

async function measured(n) {
	const voice = await import('@discordjs/voice');
	const endpoint = process.env.FASTVOICE_BENCH_ENDPOINT;
	const rssBefore = process.memoryUsage().rss;
	const connections = [];
	let opened = 0;
	for (let start = 0; start < n; start += BATCH) {
		const ready = [];
		for (let i = start; i < Math.min(n, start + BATCH); i++) {
			const guildId = String(GUILD_BASE + i);
			const connection = voice.joinVoiceChannel({
				guildId, channelId: guildId, adapterCreator: gatewayStandIn(guildId, endpoint),
				selfDeaf: false, selfMute: false,
			});
			connection.on('error', (error) => console.error(`guild ${guildId}:`, error));
			connections.push(connection);
			ready.push(voice.entersState(connection, voice.VoiceConnectionStatus.Ready, 60_000));
		}
		for (const result of await Promise.allSettled(ready)) {
			if (result.status === 'fulfilled') opened++;
			else console.error('not ready:', result.reason?.message ?? result.reason);
		}
	}
	const arrivals = {};
	const origin = performance.timeOrigin;
	connections.forEach((connection, i) => {
		const seqs = [];
		const times = [];
		arrivals[String(GUILD_BASE + i)] = [seqs, times];
		const stream = connection.receiver.subscribe((SPEAKER_BASE + BigInt(i)).toString(), {
			end: { behavior: voice.EndBehaviorType.Manual },
		});
		stream.on('data', (opus) => {
			seqs.push(opus.readUInt32BE(0));
			times.push((origin + performance.now()) / 1000);
		});
		stream.on('error', (error) => console.error('receive stream:', error.message));
	});
	process.send({ ready: opened });
	await nextMessage(process, (m) => m === 'window');
	const cpuBefore = cpuSeconds();
	const wallBefore = performance.now();
	await nextMessage(process, (m) => m === 'end');
	const cpu = cpuSeconds() - cpuBefore;
	const wall = (performance.now() - wallBefore) / 1000;
	const rssAfter = process.memoryUsage().rss;
	process.send({
		result: {
			opened, cpu, wall, rss_kib_per_call: Math.round(((rssAfter - rssBefore) / 1024 / n) * 10) / 10,
			peer: `@discordjs/voice ${voice.version}`, node: process.version,
		},
		arrivals,
	});
	await nextMessage(process, (m) => m === 'destroy');
	for (const connection of connections) connection.destroy();
	setTimeout(() => process.exit(0), 500);
}

// -- the process that starts the server ------------------------------------------------

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
	const env = { ...process.env };
	delete env.FASTVOICE_NO_EXTENSIONS;
	const server = spawn(python, [join(HERE, '..', 'receive_server_process.py'), '--tls', `--mode=${MODE}`], {
		stdio: ['pipe', 'pipe', 'inherit'], env,
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
		const died = childExit.then((code) => {
			throw new Error(`the measured process exited with ${code} before reporting`);
		});
		await Promise.race([nextMessage(child, (m) => m && m.ready !== undefined), died]);
		server.stdin.write(`start ${seconds}\n`);
		const streaming = await withTimeout(lines.next(), 120_000, 'the server did not start streaming');
		if (streaming.done || !streaming.value.startsWith('streaming')) throw new Error('the server did not stream');
		child.send('window');
		const line = await withTimeout(lines.next(), 120_000 + 2000 * seconds, 'the voice server did not report');
		const report = JSON.parse(line.value);
		await new Promise((resolve) => setTimeout(resolve, 300));
		child.send('end');
		const message = await Promise.race([nextMessage(child, (m) => m && m.result !== undefined), died]);
		child.send('destroy');
		await withTimeout(childExit, 30_000, 'the measured process did not exit');
		process.stdout.write(`${JSON.stringify({ ...message.result, mode: MODE, report, arrivals: message.arrivals })}\n`);
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
	process.on('disconnect', () => process.exit(1));
	await measured(n);
} else {
	try {
		await main(n, seconds);
	} catch (error) {
		console.error(error);
		process.exitCode = 1;
	}
}
