// Kafka's own Java consumer as the anchor of bench/rebalance: the same join/leave scenario
// that ebb runs, with the client every Kafka user knows, so ebb's rebalance figures have a
// reference beside them.
//
// Classic group protocol with the cooperative-sticky assignor, session timeout 10 s and
// heartbeat 1 s (ebb's defaults), manual commits, fetches that wait 100 ms for records. Each poll's records go to a JSON-lines
// file, one line per record: {"partition":P,"offset":O,"processed_ms":NOW_MS}, the same
// fields ebb's file sink writes (processed_ms shared by one partition's records of a poll).
// The file is written through a buffer and flushed once per poll; an optional sleep per
// poll, before the write, stands for a slow sink. Offsets are committed asynchronously
// after each poll, synchronously when partitions are revoked and on shutdown (SIGTERM).
//
// Usage: java [-Dstart.file=PATH] -cp "<kafka libs>/*:<classes>" RebalanceConsumer \
//          BOOTSTRAP TOPIC GROUP OUTPUT [SINK_DELAY_MS]
// bench/rebalance compiles it against the kafka-clients jar of scripts/kafka-local's cache.

import java.io.BufferedOutputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.CooperativeStickyAssignor;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class RebalanceConsumer {
    private static volatile boolean stopping;

    public static void main(String[] args) throws IOException, InterruptedException {
        if (args.length < 4 || args.length > 5) {
            System.err.println(
                "usage: RebalanceConsumer BOOTSTRAP TOPIC GROUP OUTPUT [SINK_DELAY_MS]");
            System.exit(2);
        }
        String bootstrap = args[0], topic = args[1], group = args[2], output = args[3];
        long sinkDelayMs = args.length == 5 ? Long.parseLong(args[4]) : 0;

        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "classic");
        props.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
            CooperativeStickyAssignor.class.getName());
        props.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "10000");
        props.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, System.getProperty("heartbeat.ms", "1000"));
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        // A fetch waits up to 100 ms for records (the minimum size is never reached at the
        // bench's rates), so a poll holds ~100 ms of records, like ebb's batches closing on
        // their 100 ms timeout. With the default (answer as soon as one record is there) the
        // consumers polled ~130 times a second each, and their commits loaded the broker.
        props.put(ConsumerConfig.FETCH_MAX_WAIT_MS_CONFIG, "100");
        props.put(ConsumerConfig.FETCH_MIN_BYTES_CONFIG, "1048576");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

        KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props);
        OutputStream out = new BufferedOutputStream(new FileOutputStream(output, true), 1 << 16);
        CountDownLatch done = new CountDownLatch(1);
        // SIGTERM: break the poll loop, then let main commit and close before the JVM exits.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stopping = true;
            consumer.wakeup();
            try {
                done.await(30, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }, "shutdown"));

        try {
            // -Dstart.file=PATH: the JVM is up and the consumer built, but it joins the group
            // only once PATH exists, so that a joining member's JVM start-up (seconds of class
            // loading on a small machine) is not part of the event.
            String startFile = System.getProperty("start.file");
            if (startFile != null) {
                Path start = Path.of(startFile);
                while (!stopping && !Files.exists(start)) {
                    Thread.sleep(5);
                }
            }
            consumer.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                @Override
                public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
                    // Records of the revoked partitions were written and flushed by the
                    // previous iteration; their positions go to the group before they move.
                    if (!partitions.isEmpty()) {
                        consumer.commitSync();
                    }
                }

                @Override
                public void onPartitionsAssigned(Collection<TopicPartition> partitions) {}
            });
            StringBuilder line = new StringBuilder(96);
            while (true) {
                ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(100));
                if (records.isEmpty()) {
                    continue;
                }
                if (sinkDelayMs > 0) {
                    Thread.sleep(sinkDelayMs);
                }
                for (TopicPartition tp : records.partitions()) {
                    long now = System.currentTimeMillis();
                    for (ConsumerRecord<byte[], byte[]> r : records.records(tp)) {
                        line.setLength(0);
                        line.append("{\"partition\":").append(r.partition())
                            .append(",\"offset\":").append(r.offset())
                            .append(",\"processed_ms\":").append(now).append("}\n");
                        out.write(line.toString().getBytes(StandardCharsets.UTF_8));
                    }
                }
                out.flush();
                // A commit that fails (the group rebalancing) is left to the next one, or to
                // the synchronous commit before the partitions move.
                consumer.commitAsync((offsets, error) -> {});
            }
        } catch (WakeupException e) {
            // Shutdown asked for.
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            try {
                out.flush();
                consumer.commitSync();
            } catch (RuntimeException e) {
                System.err.println("RebalanceConsumer: final commit failed: " + e);
            } finally {
                consumer.close();
                out.close();
                done.countDown();
            }
        }
    }
}
