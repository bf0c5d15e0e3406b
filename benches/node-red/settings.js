// Node-RED settings for benches/mqtt_kafka_load.sh: no editor credentials file encryption prompt, warnings
// only on the console (a log line per message would be part of what is measured), no flow file backups.
module.exports = {
    uiHost: "127.0.0.1",
    credentialSecret: false,
    flowFilePretty: true,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    editorTheme: { projects: { enabled: false }, tours: false },
    diagnostics: { enabled: false },
    telemetry: { enabled: false },
};
